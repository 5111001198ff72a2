from packcache.cli import main

main()

"""`make bench`: every benchmark in one run, each printing its table with ratios and targets."""

from tests.bench import builder, engines, index_scale, ingest, rebase

if __name__ == "__main__":
    index_scale.main()
    ingest.main()
    engines.main()
    rebase.main()
    builder.main()

"""`make bench`: every benchmark in one run, each printing its table with ratios and targets."""

from tests.bench import builder, index_scale, ingest

if __name__ == "__main__":
    index_scale.main()
    ingest.main()
    builder.main()

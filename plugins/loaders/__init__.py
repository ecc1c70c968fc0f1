"""What every loader shares: the snapshot diff of a processed table, read in Arrow batches, and the load runner.

A loader (``loaders/<store>/``) keeps one kind of serving store in step with the processed zone's Iceberg tables. This
layer decides what to load (the snapshot diff between the one the store holds and the target), reads those rows from
the data files without Spark, hands them to the loader and reports what it did; the loader only writes.

May import: plugins.core, plugins.transforms, the hook system.
"""

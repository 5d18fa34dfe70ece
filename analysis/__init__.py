"""Analysis of aimray studies: Parquet in, tables and figures out. Never imports torch or ray."""

"""Dataset converters that write WebDataset shards (``vidiff-prep``)."""

"""Dataset sources; every module here registers datasets in `kdlab.data.base.DATASETS` on import."""

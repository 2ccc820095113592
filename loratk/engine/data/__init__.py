"""Training data: reading sources through the dataset-format plugins, tokenizing rows into
``input_ids`` + ``labels`` (-100 where no loss is taken), and batching them."""

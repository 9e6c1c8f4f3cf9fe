"""Data: records from files or the hub, conversations, tokenisation with loss masks, packing, batches."""

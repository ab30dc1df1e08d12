"""Everything between the world and the GLIED model: tokenizer, processor, feature readers, data sets, pipeline."""

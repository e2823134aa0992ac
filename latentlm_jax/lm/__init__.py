"""The language-model family: the text LM and the multimodal LatentLM task and losses."""

"""Weight math and weight files: averaging, checks, streaming safetensors I/O, LoRA ingredients."""

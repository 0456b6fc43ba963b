"""Runtime stage: exported artifacts -> answers (chat, description, grounding) on CPU or CUDA."""

"""Post-training: continued pretraining helpers, the chat template and chat data, SFT, `rain chat`."""

"""Serving: the labeling web app (`chatforge label serve`, in `serve/label/`) and the chat API."""

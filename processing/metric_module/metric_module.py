"""Lets `evaluate.load("processing/metric_module")` find the caption metric: evaluate loads a folder through the
script named like the folder. The metric itself lives in glied_caption_metrics.py (evaluate copies it along).
No comment may follow the import below: evaluate would read it as a file to fetch."""
from .glied_caption_metrics import GliedCaptionMetrics

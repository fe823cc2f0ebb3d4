"""Tools outside the product: the demo model's training kit. The runtime package never imports this."""

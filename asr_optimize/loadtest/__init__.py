"""Load testing a served model: the load generator (``loadgen``), the swap-under-load soak (``soak``), charts."""

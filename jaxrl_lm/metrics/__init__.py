"""jaxrl_lm.metrics"""

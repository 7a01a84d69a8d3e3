"""jaxrl_lm.losses"""

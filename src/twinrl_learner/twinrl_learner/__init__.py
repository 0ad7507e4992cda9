"""twinrl_learner."""

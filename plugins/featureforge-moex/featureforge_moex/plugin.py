"""featureforge entry point of ``featureforge-moex``."""

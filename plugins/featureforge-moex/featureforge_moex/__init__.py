"""featureforge-moex: MoE-X (Yang et al. 2025, arXiv 2503.07639) for featureforge."""

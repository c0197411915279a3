"""On-policy training pieces shared by PPO and GRPO: rollouts sampled from the policy, and the
reward that scores them."""

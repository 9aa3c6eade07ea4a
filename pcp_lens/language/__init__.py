"""Language-model backdoors (METHODS §3.2, §4.4–4.6, §10): data, generation, ASR, editing."""

"""A wing: the embedded default (Russian sentences, espeak-ng speech, a tiny Canary built from config, its
pretraining). The core never imports it."""

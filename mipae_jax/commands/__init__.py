"""The command-line tools that `pip install` puts on the PATH (setup.cfg's entry points).

  mipae-train     train the autoencoder, then the pose LSTM, then evaluate (train.py)
  mipae-evaluate  evaluate a run directory's latest checkpoints (evaluate.py)
  mipae-study     compare methods over seeds, each an ordinary run (study.py)
  mipae-convert   a published PyTorch checkpoint -> a run directory (convert.py)
  mipae-export    a run -> a small exported model that load_run reads (export.py)
  mipae-prepare   build a config's dataset once as TFDS splits (mipae_jax.data.prepare)
  mipae-preview   a GIF and filmstrip of a dataset's videos (mipae_jax.data.preview)

All take `--name=value` flags, exit 0 after `--help`, 2 on bad input (one line), 1 when a
run fails (one line); `--verbose` or `MIPAE_VERBOSE=1` adds the traceback. Each module
defines its flags inside `main()`, so importing several of them in one process is safe.
"""

"""Weight conversion behind ``ppcr prepare weights``: stream checkpoints, rename keys, extract LoRA.

Modules (each imports torch only inside its functions, so importing them is cheap):

- :mod:`~ppcr.weights.shards`: resolve a checkpoint (directory, file, cached hub id) and stream
  its tensors one shard at a time.
- :mod:`~ppcr.weights.key_mapping`: ordered regex rule tables and the renaming stream.
- :mod:`~ppcr.weights.glamm_mapping`, :mod:`~ppcr.weights.standard_mappings`: the tables for GLaMM,
  llava-hf, CLIP and SAM.
- :mod:`~ppcr.weights.token_rows`: carry added-token rows of embed_tokens/lm_head by token string.
- :mod:`~ppcr.weights.lora_svd`, :mod:`~ppcr.weights.adapter_files`: rank-r adapters from merged
  checkpoints, written in peft's layout.
- :mod:`~ppcr.weights.loading`: copy a renamed stream into built modules, tensor by tensor.
- :mod:`~ppcr.weights.report`: the record of every key and every extracted matrix.
- :mod:`~ppcr.weights.assembly`: the two recipes (``load_llava``, ``load_glamm``) composing the above.
- :mod:`~ppcr.weights.skeleton`: build modules without initialising weights (meta parameters).
- :mod:`~ppcr.weights.prepare`: ``prepare_weights``, the whole command: skeleton, assembly, a PPCR
  checkpoint directory and ``conversion_report.json``.
"""

"""Loaders that hand a sealed model to an inference runtime from memory, never from a plaintext file.

One module per runtime, each behind its extra and importing the runtime only when called:

- ``modelseal.runtimes.onnxruntime``: ``load_session`` (``pip install 'modelseal[onnxruntime]'``)
- ``modelseal.runtimes.openvino``: ``read_model``, ``compile_model`` (``modelseal[openvino]``)
- ``modelseal.runtimes.torch``: ``load``, ``load_state_dict`` (``modelseal[torch]``)
- ``modelseal.runtimes.safetensors``: ``load`` (``modelseal[safetensors]``)

Every loader authenticates the whole sealed model before the runtime sees a byte, and raises a
:class:`modelseal.RuntimeUnavailableError` naming the extra when its runtime is missing. Each module
says how long the plaintext lives in memory.
"""

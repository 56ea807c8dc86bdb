"""Public artefacts and the Hub: ``config.json`` + ``model.safetensors`` written and read strictly.

[`scoredistill.io.artefact`][scoredistill.io.artefact] is the format (names, the role registry, strict weight
loading); [`scoredistill.io.hub`][scoredistill.io.hub] the ``huggingface_hub`` glue (save, load, push, model
cards). Everything read from a file or an endpoint is checked before it is used (``_untrusted``).
"""

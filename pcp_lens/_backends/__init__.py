"""The two TransformerLens lines pcp_lens runs on, one small module each.

:mod:`pcp_lens._tl` imports exactly one of them, by the installed TransformerLens major version:
:mod:`~pcp_lens._backends.hooked` (``HookedTransformer``, TransformerLens 2.x/3.x) or
:mod:`~pcp_lens._backends.bridge` (``TransformerBridge``, TransformerLens 4.x). Both define the
same functions; nothing outside ``_tl`` imports them.
"""

"""Model families behind one adapter interface.

base      Candidate, ChatExample, ModelFamilyError, FamilyAdapter (family-independent logic)
llava / internvl / qwen2vl   one adapter per family (module names, pixel inputs, image tokens)
registry  FAMILIES, load_family (local HF folder -> adapter)
tokenizer build_byte_tokenizer (byte-level, lossless for any text)
tiny      TinySize, build_tiny (random-weight models saved as HF folders)

Nothing is imported here, so importing the package stays cheap.
"""

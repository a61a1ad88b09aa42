"""Model families behind one adapter interface.

base       Candidate, ChatExample, ModelFamilyError, FamilyAdapter (family-independent logic over the
           checkpoint's own processor)
llava / internvl / qwen / idefics3 / gemma3   one short declaration per family
catalog    the family names and their config.json model types (no torch)
processor  the folder's processor, with or without torchvision
registry   family_adapter, detect_family, check_folder, load_family (local HF folder -> adapter)
tokenizer  build_byte_tokenizer (byte-level, lossless for any text)
chat_templates / tiny   real chat templates; TinySize, build_tiny (random-weight checkpoints saved by
           transformers, in the current or the older hub layout)

Nothing is imported here, so importing the package stays cheap.
"""

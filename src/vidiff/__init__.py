"""VIDiff: one diffusion model that translates videos according to text and/or image instructions."""

import logging as _logging


__version__ = "0.1.0"

# torchao (stage/optimizer=adamw8bit), which diffusers also imports when it is installed, makes torch and diffusers
# log import-time notices on every command that no user can act on: muted here, nothing else is
for _name in ("torch.utils._pytree", "diffusers.quantizers.torchao.torchao_quantizer"):
    _logging.getLogger(_name).setLevel(_logging.ERROR)

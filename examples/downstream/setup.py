from setuptools import Extension, setup

import uidprobe

# define_macros() is evaluated on the machine that builds: the store that
# `uidprobe configure` wrote, else a live probe as root, else every value 0
# (with a warning; UIDPROBE_STRICT=1 makes that an error).
setup(ext_modules=[Extension("switchmode", ["switchmode.c"], define_macros=uidprobe.define_macros())])

# Extension packaging is not part of the stand-in.

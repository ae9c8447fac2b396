// Pure logic: no I/O, no clock, no files. Depends on the standard library only.

"""Operations: what the commands do, each in one module that reads top to bottom."""

//! The weft overlay node: a sans-I/O core and its thin I/O layer.

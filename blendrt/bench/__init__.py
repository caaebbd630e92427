"""`blendrt bench`: blended multi-turn serving, blendrt against transformers and against one
pool per member, in one run."""

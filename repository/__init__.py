"""The model repository: where exported models live and what identifies one.

The trainer writes models in this layout, the selector promotes them into numbered
versions, the model server loads the versions; all three read the layout, the version list
and a model's digest from here, and none of them imports another.
"""

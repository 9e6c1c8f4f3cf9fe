"""Recipes: functions returning typed configs. `xr-nemo sft --recipe NAME` calls `NAME.sft()` in this folder.

Installed as `xr_nemo.recipes` (pyproject maps this folder there): `xr_nemo.recipes.NAME`."""

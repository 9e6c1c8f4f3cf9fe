"""Recipes: functions returning typed configs. `xr-nemo sft --recipe NAME` calls `recipes.NAME.sft()`."""

"""`vmae study`: does MAE pretraining in vmae learn something useful? Data whose class is what an object is
(``items``, ``data``), arms fixed before running and paired by seed, and a report with intervals."""

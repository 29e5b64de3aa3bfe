"""Raw public data -> RecBole atomic / benchmark files + feature files (one script per source)."""

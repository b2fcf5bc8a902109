"""The p4sim server side: on-disk storage, authentication and triggers."""

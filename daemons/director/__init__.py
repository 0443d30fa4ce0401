"""The director: virtual queues, skills-based routing and agent reservation
without an outside router (docs/director.md)."""

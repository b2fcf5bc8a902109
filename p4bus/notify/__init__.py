"""p4bus notify: tells people when a job waits for them, fails or finishes.

A client of the bus like `p4bus tail`: it reads the broker's journal of ``job.*`` events
(source.py), turns the ones the rules pick into notices (rules.py, message.py), records them
in a durable outbox together with the journal id it has read up to (outbox.py), and delivers
them from one worker thread per receiver (worker.py, senders.py). service.py ties them up.
"""

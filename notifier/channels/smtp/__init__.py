"""Email over SMTP, in three layers, one module each.

``transaction``
    One mail transaction on an open connection. A server that offers
    PIPELINING (RFC 2920: Postfix, Exim, the big providers) gets MAIL, RCPT
    and DATA in one write and answers them together: two round trips per
    message instead of four; one that also offers CHUNKING (RFC 3030:
    Postfix, Exchange, Gmail) gets the message in the same write, one round
    trip. Others get smtplib's one command at a time. Round trips matter
    more than bytes here: each wakes the server and waits on it
    (``bench/README.md``). A refused transaction is ended with RSET, so the
    connection can carry the next message.
``connection``
    Where a server is (``SmtpProvider``), how a connection to it is opened
    (implicit TLS or STARTTLS, EHLO, login), and ``SmtpChannel``: one
    long-lived connection per worker process, reused for every message,
    since opening one costs about 3× a send and STARTTLS about 10×. A
    server that dropped an idle connection (aiosmtpd after 300 s, most
    providers sooner) is met with one immediate reconnect inside the same
    attempt, but only before the server accepted MAIL FROM; a connection
    lost after the message was handed over is ambiguous (the server may have
    it) and is never sent again inside the attempt. Anything else is
    classified and left to the caller's retry policy. Every wait is cut to
    the delivery's deadline. ``notifier health`` opens its probe connection
    with the same code.
``failover``
    Policy across providers: the fallback server takes over within the same
    attempt when the primary is unavailable (never after an ambiguous loss),
    and a circuit breaker shared through Redis skips the primary for a
    cool-down once it is down.

Certificates are always verified (``MAIL_CA_FILE`` adds a private CA), and
credentials are never sent over a plain connection unless
``MAIL_ALLOW_PLAIN_AUTH`` says the relay is local.
"""

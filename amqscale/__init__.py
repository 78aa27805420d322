"""amqscale: AMQP 1.0 messaging that uses every core."""

"""Responses: what customers send back through the signed links.

``recording`` stores unsubscribes, survey answers and clicks, ``export`` lists them for
`retention responses`, ``pages`` renders the customer-facing pages.
"""

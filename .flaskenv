# Read by the `flask` command (python-dotenv): where the app factory lives.
FLASK_APP=ingestor

from pooling_client.cli import main

main()

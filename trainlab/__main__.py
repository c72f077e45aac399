from trainlab.main import main

main()

package main

func runDemo(args []string) int  { return 0 }
func runBench(args []string) int { return 0 }
